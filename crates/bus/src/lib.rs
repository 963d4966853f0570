//! The NATS JetStream edge: the `CASES` stream, publishing case events with
//! `Nats-Msg-Id` = the hex SHA-256 of the body (CONTRACT §2, so JetStream
//! drops only byte-identical re-sends and every other message reaches the
//! log, to be judged by the projector), and reading the stream in order
//! from a sequence.
//!
//! The projector's checkpoint lives in its own store, not in a durable
//! consumer: it reads with an ordered consumer from checkpoint + 1, so a
//! restart, a rebuild and a benchmark all read the log the same way.

use std::path::PathBuf;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, context::PublishAckFuture, stream};
use async_nats::HeaderMap;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};

/// The stream that holds every case event (§2).
pub const STREAM_NAME: &str = "CASES";

/// The longest wait for a JetStream API reply or a publish ack.
pub const API_TIMEOUT: Duration = Duration::from_secs(5);

/// How long JetStream remembers a `Nats-Msg-Id` to drop a byte-identical
/// re-publish, by default (`--duplicate-window`): within it, a re-sent event
/// is answered `"duplicate": true` with the first copy's sequence. The
/// projector deduplicates by event id for ever, so beyond it a re-send is
/// stored again but still counts once. nats-server keeps the ids of the
/// window in memory (README, "Durability").
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(24 * 60 * 60);

/// The header a redriven event carries: the stream sequence of the parked
/// copy it replaces (`kpictl redrive`), so the projector can retire it.
pub const REDRIVE_OF_HEADER: &str = "Kpi-Redrive-Of";

/// The header every event our publishers put on the bus carries: who sent
/// it (the sender token's name, CONTRACT §8.1; `local` without tokens).
pub const SENDER_HEADER: &str = "Kpi-Sender";

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error(
        "cannot reach NATS at {url}: {detail} (is nats-server running? see deploy/scripts/demo.sh)"
    )]
    Connect { url: String, detail: String },
    #[error("reading the NATS credentials file {path}: {detail}")]
    Credentials { path: String, detail: String },
    #[error("stream {STREAM_NAME}: {0}")]
    Stream(String),
    #[error(
        "stream {STREAM_NAME} exists with another configuration: {differences}; this system needs \
         file storage, limits retention and the subjects [{expected_subjects}]. Refusing to use it: \
         fix or recreate the stream as an operator (nats stream info {STREAM_NAME} shows it)"
    )]
    StreamMismatch {
        differences: String,
        expected_subjects: String,
    },
    #[error("publish to {subject}: {detail}")]
    Publish { subject: String, detail: String },
    #[error(
        "NATS at {url} refused the login of user `{user}` ({detail}): check its password or \
         credentials (--nats-password, --nats-creds) against nats-server's users \
         (deploy/nats/users.conf); a restart will not fix it"
    )]
    LoginRefused {
        url: String,
        user: String,
        detail: String,
    },
    #[error(
        "NATS refused user `{user}` what it asked ({detail}): deploy/nats/users.conf does not \
         allow it; this service or command runs as the wrong user, or the file is not this build's"
    )]
    Violation { user: String, detail: String },
    #[error("reading stream {STREAM_NAME}: {0}")]
    Read(String),
}

/// A sender's name as a header value (a name is one line: anything else
/// is replaced, never a reason to refuse the event).
fn sender_header(sender: &str) -> async_nats::HeaderValue {
    sender
        .parse()
        .unwrap_or_else(|_| sender.replace(['\r', '\n'], " ").as_str().into())
}

/// The headers of a published event: its `Nats-Msg-Id` and, when known,
/// who sent it ([`SENDER_HEADER`]).
fn event_headers(message_id: &str, sender: Option<&str>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, message_id);
    if let Some(sender) = sender {
        headers.insert(SENDER_HEADER, sender_header(sender));
    }
    headers
}

/// The `Nats-Msg-Id` of a message: the lowercase hex SHA-256 of its body,
/// for every publisher (CONTRACT §2).
pub fn message_id(payload: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(payload))
}

/// The `Nats-Msg-Id` of a redrive: the hex SHA-256 of its
/// `Kpi-Redrive-Of` header line and its body.
pub fn redrive_message_id(parked_sequence: u64, payload: &[u8]) -> String {
    use sha2::Digest;
    let mut hash = sha2::Sha256::new();
    hash.update(format!("{REDRIVE_OF_HEADER}: {parked_sequence}\n").as_bytes());
    hash.update(payload);
    hex::encode(hash.finalize())
}

/// The `CASES` stream configuration: file storage, kept for ever (the log
/// is the source of truth for replays and audits), JetStream dropping
/// re-sends within `duplicate_window`.
pub fn stream_config(replicas: usize, duplicate_window: Duration) -> stream::Config {
    stream::Config {
        name: STREAM_NAME.to_owned(),
        description: Some(
            "Case events from the provincial one-stop systems (CONTRACT §2)".to_owned(),
        ),
        subjects: vec![kpi_events::STREAM_SUBJECTS.to_owned()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::New,
        duplicate_window,
        num_replicas: replicas.max(1),
        // The log is the audit trail: no message is ever deleted or purged.
        deny_delete: true,
        deny_purge: true,
        ..Default::default()
    }
}

/// How an existing stream differs from [`stream_config`] in what the
/// system relies on (storage, retention, subjects); empty when it fits.
pub fn config_differences(found: &stream::Config, wanted: &stream::Config) -> Vec<String> {
    let mut differences = Vec::new();
    if found.storage != wanted.storage {
        differences.push(format!(
            "storage is {:?}, not {:?}",
            found.storage, wanted.storage
        ));
    }
    if found.retention != wanted.retention {
        differences.push(format!(
            "retention is {:?}, not {:?}",
            found.retention, wanted.retention
        ));
    }
    let mut found_subjects = found.subjects.clone();
    found_subjects.sort();
    let mut wanted_subjects = wanted.subjects.clone();
    wanted_subjects.sort();
    if found_subjects != wanted_subjects {
        differences.push(format!(
            "subjects are [{}], not [{}]",
            found_subjects.join(", "),
            wanted_subjects.join(", ")
        ));
    }
    differences
}

/// How to reach NATS, shared by every service and `kpictl`: the server and
/// the credentials of this service's own NATS user (CONTRACT §8).
#[derive(Debug, Clone, clap::Args)]
pub struct NatsArgs {
    /// NATS server, or a cluster's servers separated by commas.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// A NATS credentials file (JWT and NKey seed) for this service's user.
    #[arg(long, env = "NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,
    /// This service's NATS user (with --nats-password).
    #[arg(long, env = "NATS_USER")]
    pub nats_user: Option<String>,
    /// The NATS user's password.
    #[arg(long, env = "NATS_PASSWORD", hide_env_values = true)]
    pub nats_password: Option<String>,
    /// The CA (PEM) that signed the NATS servers' certificates, for
    /// `tls://` addresses (a cluster's client ports, deploy/nats/cluster/).
    #[arg(long, env = "NATS_CA")]
    pub nats_ca: Option<PathBuf>,
    /// Copies of the CASES stream when this service creates it: 3 on a
    /// three-node JetStream cluster (deploy/nats/cluster/), 1 on a single
    /// server.
    #[arg(long, env = "KPI_STREAM_REPLICAS", default_value_t = 1)]
    pub replicas: usize,
    /// How long the stream answers a re-sent event as a duplicate, when
    /// this service creates it (`kpictl stream-init` also changes it on an
    /// existing stream): `24h`, `2m`, `90s`.
    #[arg(long, env = "KPI_DUPLICATE_WINDOW", default_value = "24h",
          value_parser = humantime::parse_duration)]
    pub duplicate_window: Duration,
}

impl NatsArgs {
    /// Plain access to `url`, without credentials (tests, local demos).
    pub fn plain(url: impl Into<String>) -> Self {
        NatsArgs {
            nats_url: url.into(),
            nats_creds: None,
            nats_user: None,
            nats_password: None,
            nats_ca: None,
            replicas: 1,
            duplicate_window: DUPLICATE_WINDOW,
        }
    }

    /// Connects as `client_name` with these credentials.
    pub async fn connect(&self, client_name: &str) -> Result<Bus, BusError> {
        let mut options = match &self.nats_creds {
            Some(path) => async_nats::ConnectOptions::with_credentials_file(path)
                .await
                .map_err(|err| BusError::Credentials {
                    path: path.display().to_string(),
                    detail: err.to_string(),
                })?,
            None => async_nats::ConnectOptions::new(),
        };
        if let Some(ca) = &self.nats_ca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let Some(user) = &self.nats_user {
            // Each user gets its replies on an inbox of its own, which no
            // other user may subscribe to (deploy/nats/users.conf).
            options = options
                .user_and_password(user.clone(), self.nats_password.clone().unwrap_or_default())
                .custom_inbox_prefix(inbox_prefix(user));
        }
        let mut bus = Bus::connect_with(options, &self.nats_url, client_name, self.replicas)
            .await
            .map_err(|err| match err {
                BusError::Connect { url, detail } if is_login_refused(&detail) => {
                    BusError::LoginRefused {
                        url,
                        user: self.user_name(),
                        detail,
                    }
                }
                other => other,
            })?;
        bus.user = Arc::from(self.user_name());
        bus.duplicate_window = self.duplicate_window;
        Ok(bus)
    }

    /// The user a login is made as, for messages.
    fn user_name(&self) -> String {
        match (&self.nats_user, &self.nats_creds) {
            (Some(user), _) => user.clone(),
            (None, Some(path)) => format!("of {}", path.display()),
            (None, None) => "(no user)".to_owned(),
        }
    }
}

/// The inbox prefix of a NATS user: `_INBOX_<user>` (CONTRACT §8).
pub fn inbox_prefix(user: &str) -> String {
    format!("_INBOX_{user}")
}

/// Whether a connection error is the server refusing the login.
fn is_login_refused(detail: &str) -> bool {
    let detail = detail.to_ascii_lowercase();
    detail.contains("authorization violation")
        || detail.contains("authentication")
        || detail.contains("user authentication expired")
}

/// A connection to NATS with its JetStream context.
#[derive(Clone)]
pub struct Bus {
    jetstream: jetstream::Context,
    /// Copies of `CASES` when this connection creates it.
    replicas: usize,
    /// Its duplicate window when this connection creates it.
    duplicate_window: Duration,
    /// The first thing the server refused this connection's user
    /// (a permissions or authorization violation), if any.
    violations: tokio::sync::watch::Receiver<Option<String>>,
    /// The server refused this user the creation of `CASES`.
    may_not_create: Arc<std::sync::atomic::AtomicBool>,
    /// The user it logged in as, for messages.
    user: Arc<str>,
}

/// The stream's identity (a recreated stream has a new creation time) and
/// the sequences it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamState {
    pub created: DateTime<Utc>,
    pub first_sequence: u64,
    pub last_sequence: u64,
}

/// The exit status of a service stopped by an error a restart cannot fix
/// (sysexits' EX_CONFIG): a configuration file that does not load, a
/// `CASES` stream that is not this system's, views that no longer match
/// the log. The systemd units do not restart on it
/// (`RestartPreventExitStatus=78`); other errors exit with 1 and are.
pub const EXIT_NEEDS_OPERATOR: u8 = 78;

/// One message read from the stream, with its position.
#[derive(Debug, Clone)]
pub struct StreamMessage {
    pub sequence: u64,
    pub subject: String,
    pub payload: Bytes,
    pub published: Option<DateTime<Utc>>,
    /// The parked copy this message redrives ([`REDRIVE_OF_HEADER`]).
    pub redrive_of: Option<u64>,
    /// Messages the stream held after this one when it was delivered
    /// (0 when unknown).
    pub pending: u64,
    /// Who sent it ([`SENDER_HEADER`]), when its publisher said.
    pub sender: Option<String>,
}

impl Bus {
    /// Connects without credentials, failing fast with a clear message
    /// when NATS is down.
    pub async fn connect(url: &str, client_name: &str) -> Result<Bus, BusError> {
        Bus::connect_with(async_nats::ConnectOptions::new(), url, client_name, 1).await
    }

    async fn connect_with(
        options: async_nats::ConnectOptions,
        url: &str,
        client_name: &str,
        replicas: usize,
    ) -> Result<Bus, BusError> {
        // A cluster's nodes, comma-separated; the client fails over among them.
        let servers = url
            .split(',')
            .map(|server| server.trim().parse::<async_nats::ServerAddr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| BusError::Connect {
                url: url.to_owned(),
                detail: format!("not a NATS URL or comma-separated list of them: {err}"),
            })?;
        let name = client_name.to_owned();
        let (violated, violations) = tokio::sync::watch::channel(None);
        let violated = Arc::new(violated);
        let may_not_create = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let refused_creation = may_not_create.clone();
        let client = options
            .name(client_name)
            .connection_timeout(Duration::from_secs(5))
            // A lost connection or a slow subscription loses in-flight pull
            // requests and messages: say so where the operator looks. What
            // the server refuses the user is remembered: a service stops on
            // it (a restart cannot give a user permissions).
            .event_callback(move |event| {
                let name = name.clone();
                let violated = violated.clone();
                let refused_creation = refused_creation.clone();
                async move {
                    match event {
                        async_nats::Event::Connected | async_nats::Event::Closed => {
                            tracing::info!(client = %name, %event, "NATS connection")
                        }
                        async_nats::Event::ServerError(error) => {
                            let detail = error.to_string();
                            let lower = detail.to_ascii_lowercase();
                            let violation = lower.contains("permissions violation")
                                || lower.contains("authorization violation");
                            // A user that may not create CASES tries when
                            // the stream is missing: the operator creates
                            // it (`kpictl stream-init`), and the service
                            // goes on by itself.
                            let creating_the_stream = detail.contains("$JS.API.STREAM.CREATE.");
                            if violation && creating_the_stream {
                                refused_creation.store(true, std::sync::atomic::Ordering::Relaxed);
                                tracing::warn!(client = %name, %detail, "CASES is missing and this user may not create it: the operator creates it with `kpictl stream-init`");
                            } else if violation {
                                tracing::error!(client = %name, %detail, "NATS refused this user");
                                violated.send_if_modified(|first| {
                                    let new = first.is_none();
                                    if new {
                                        *first = Some(detail);
                                    }
                                    new
                                });
                            } else {
                                tracing::warn!(client = %name, %detail, "NATS server error");
                            }
                        }
                        event => tracing::warn!(client = %name, %event, "NATS connection"),
                    }
                }
            })
            .connect(servers)
            .await
            .map_err(|err| BusError::Connect {
                url: url.to_owned(),
                detail: err.to_string(),
            })?;
        Ok(Bus {
            jetstream: jetstream::ContextBuilder::new()
                .timeout(API_TIMEOUT)
                .build(client),
            replicas: replicas.max(1),
            duplicate_window: DUPLICATE_WINDOW,
            violations,
            may_not_create,
            user: Arc::from("(no user)"),
        })
    }

    /// The same connection, with another wait for API replies and acks.
    pub fn with_timeout(&self, timeout: Duration) -> Bus {
        let mut jetstream = self.jetstream.clone();
        jetstream.set_timeout(timeout);
        Bus {
            jetstream,
            replicas: self.replicas,
            duplicate_window: self.duplicate_window,
            violations: self.violations.clone(),
            may_not_create: self.may_not_create.clone(),
            user: self.user.clone(),
        }
    }

    /// Waits until the server refuses this connection's user something
    /// (a permissions or authorization violation): a service stops on it,
    /// since a restart cannot give a user permissions.
    pub async fn violation(&self) -> BusError {
        let mut violations = self.violations.clone();
        loop {
            if let Some(error) = self.violated() {
                return error;
            }
            if violations.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// What the server refused this connection's user so far, if anything.
    pub fn violated(&self) -> Option<BusError> {
        let detail = self.violations.borrow().clone()?;
        Some(BusError::Violation {
            user: self.user.to_string(),
            detail,
        })
    }

    pub fn jetstream(&self) -> &jetstream::Context {
        &self.jetstream
    }

    /// The `CASES` stream, created if it does not exist yet (when this
    /// user may create it). An existing stream whose storage, retention or
    /// subjects differ from [`stream_config`] is refused.
    pub async fn ensure_stream(&self) -> Result<stream::Stream, BusError> {
        let wanted = stream_config(self.replicas, self.duplicate_window);
        let mut stream = self.existing_or_created_stream(&wanted).await?;
        let info = stream
            .info()
            .await
            .map_err(|err| BusError::Stream(err.to_string()))?;
        if info.config.num_replicas != wanted.num_replicas {
            tracing::warn!(
                found = info.config.num_replicas,
                asked = wanted.num_replicas,
                "CASES keeps another number of copies than --replicas asks; \
                 the stream is used as it is (change it with `nats stream edit CASES --replicas N`)"
            );
        }
        if info.config.duplicate_window != wanted.duplicate_window {
            tracing::warn!(
                found = %humantime::format_duration(info.config.duplicate_window),
                asked = %humantime::format_duration(wanted.duplicate_window),
                "CASES answers re-sends as duplicates for another time than --duplicate-window asks; \
                 the stream is used as it is (change it with `kpictl stream-init --duplicate-window D`)"
            );
        }
        let differences = config_differences(&info.config, &wanted);
        if !differences.is_empty() {
            return Err(BusError::StreamMismatch {
                differences: differences.join("; "),
                expected_subjects: wanted.subjects.join(", "),
            });
        }
        Ok(stream)
    }

    /// Sets the duplicate window of the existing `CASES` stream to this
    /// connection's (`--duplicate-window`); the window it had.
    pub async fn set_duplicate_window(&self) -> Result<Duration, BusError> {
        let mut stream = self.ensure_stream().await?;
        let mut config = stream
            .info()
            .await
            .map_err(|err| BusError::Stream(err.to_string()))?
            .config
            .clone();
        let before = config.duplicate_window;
        if before != self.duplicate_window {
            config.duplicate_window = self.duplicate_window;
            self.jetstream
                .update_stream(config)
                .await
                .map_err(|err| BusError::Stream(err.to_string()))?;
        }
        Ok(before)
    }

    /// Services start together, and each creates CASES when it is missing.
    /// Whoever loses that race gets "already in use" or, from nats-server
    /// 2.9 while the winner's stream is still being set up, "subjects
    /// overlap": it then looks again, a few times, for the stream the winner
    /// made. The caller checks the configuration of what it gets.
    async fn existing_or_created_stream(
        &self,
        wanted: &stream::Config,
    ) -> Result<stream::Stream, BusError> {
        const ATTEMPTS: u32 = 5;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.jetstream.get_stream(STREAM_NAME).await {
                Ok(stream) => return Ok(stream),
                Err(err) if is_stream_not_found(&err) => {}
                Err(err) => return Err(BusError::Stream(err.to_string())),
            }
            match self.jetstream.create_stream(wanted.clone()).await {
                Ok(stream) => return Ok(stream),
                Err(_) if self.may_not_create.load(std::sync::atomic::Ordering::Relaxed) => {
                    return Err(BusError::Stream(format!(
                        "it does not exist yet, and NATS user `{}` may not create it: create it once \
                         as the operator user (`kpictl stream-init --nats-user operator`); this \
                         service then goes on by itself",
                        self.user
                    )))
                }
                Err(err) if attempt >= ATTEMPTS => {
                    return Err(BusError::Stream(format!(
                        "it does not exist and could not be created ({err}); create it as the operator user (`kpictl stream-init`)"
                    )))
                }
                Err(err) => {
                    tracing::debug!(%err, attempt, "creating CASES failed; looking for it again");
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
                }
            }
        }
    }

    /// The last sequence in the stream (0 when empty).
    pub async fn last_sequence(&self) -> Result<u64, BusError> {
        Ok(self.stream_state().await?.last_sequence)
    }

    /// When the stream was created and which sequences it holds.
    pub async fn stream_state(&self) -> Result<StreamState, BusError> {
        let mut stream = self
            .jetstream
            .get_stream(STREAM_NAME)
            .await
            .map_err(|err| BusError::Stream(err.to_string()))?;
        let info = stream
            .info()
            .await
            .map_err(|err| BusError::Stream(err.to_string()))?;
        Ok(StreamState {
            created: info.created,
            first_sequence: info.state.first_sequence,
            last_sequence: info.state.last_sequence,
        })
    }

    /// Publishes one event on its subject with `Nats-Msg-Id` = the hash of
    /// its body ([`message_id`]). The returned future resolves to
    /// JetStream's ack: only then is the event stored.
    pub async fn publish_event(
        &self,
        subject: String,
        payload: Bytes,
    ) -> Result<PublishAckFuture, BusError> {
        let headers = event_headers(&message_id(&payload), None);
        self.publish_with_headers(subject, headers, payload).await
    }

    /// [`Bus::publish_event`], saying who sent the event
    /// ([`SENDER_HEADER`]; UTF-8 names intact).
    pub async fn publish_sent(
        &self,
        subject: String,
        payload: Bytes,
        sender: &str,
    ) -> Result<PublishAckFuture, BusError> {
        let headers = event_headers(&message_id(&payload), Some(sender));
        self.publish_with_headers(subject, headers, payload).await
    }

    /// Publishes a parked event again after a fix, marked with the parked
    /// copy's sequence so that the projector retires that copy. Its body is
    /// the parked one, byte for byte; its `Nats-Msg-Id` is the hash of what
    /// it carries, the redrive header and the body ([`redrive_message_id`]):
    /// JetStream drops a redrive sent twice, not the redrive of a message
    /// it still remembers.
    pub async fn publish_redrive(
        &self,
        subject: String,
        parked_sequence: u64,
        payload: Bytes,
        sender: &str,
    ) -> Result<PublishAckFuture, BusError> {
        let mut headers =
            event_headers(&redrive_message_id(parked_sequence, &payload), Some(sender));
        headers.insert(REDRIVE_OF_HEADER, parked_sequence.to_string().as_str());
        self.publish_with_headers(subject, headers, payload).await
    }

    async fn publish_with_headers(
        &self,
        subject: String,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<PublishAckFuture, BusError> {
        self.jetstream
            .publish_with_headers(subject.clone(), headers, payload)
            .await
            .map_err(|err| BusError::Publish {
                subject,
                detail: err.to_string(),
            })
    }

    /// The message stored at `sequence`, if the stream has it (an audit
    /// reads a case's events back; the projector checks that the stream
    /// still holds what it folded).
    pub async fn message_at(&self, sequence: u64) -> Result<Option<StreamMessage>, BusError> {
        let stream = self
            .jetstream
            .get_stream_no_info(STREAM_NAME)
            .await
            .map_err(|err| BusError::Stream(err.to_string()))?;
        match stream.get_raw_message(sequence).await {
            Ok(message) => Ok(Some(StreamMessage {
                sequence,
                subject: message.subject.to_string(),
                redrive_of: message
                    .headers
                    .get(REDRIVE_OF_HEADER)
                    .and_then(|value| value.as_str().parse().ok()),
                sender: message
                    .headers
                    .get(SENDER_HEADER)
                    .map(|value| value.as_str().to_owned()),
                payload: message.payload,
                published: Some(message.time),
                pending: 0,
            })),
            Err(err) if err.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(err) => Err(BusError::Read(format!("message {sequence}: {err}"))),
        }
    }

    /// When the stream stored the message at `sequence`, if it has one.
    pub async fn published_at(&self, sequence: u64) -> Result<Option<DateTime<Utc>>, BusError> {
        Ok(self
            .message_at(sequence)
            .await?
            .and_then(|message| message.published))
    }

    /// Every message from `start_sequence` on, in stream order, then new
    /// ones as they arrive.
    ///
    /// The stream ends with an error, never by skipping a message, when a
    /// message is missing between two delivered ones or when neither a
    /// message nor the server's idle heartbeat came for
    /// [`READ_HEARTBEAT`] × 2; the caller reads again from the next
    /// sequence. (async-nats' ordered consumer recreates itself only after
    /// two missed 15 s heartbeats: a read that lost its pull request sat a
    /// minute without a word.)
    pub async fn read_from(
        &self,
        start_sequence: u64,
    ) -> Result<impl Stream<Item = Result<StreamMessage, BusError>> + Send + 'static, BusError>
    {
        let stream = self.ensure_stream().await?;
        let config: consumer::pull::Config = consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: start_sequence.max(1),
            },
            ..Default::default()
        }
        .into();
        let consumer = stream
            .create_consumer(consumer::pull::Config {
                inactive_threshold: READ_INACTIVE_THRESHOLD,
                ..config
            })
            .await
            .map_err(|err| BusError::Read(err.to_string()))?;
        let messages = consumer
            .stream()
            .max_messages_per_batch(READ_BATCH)
            .expires(READ_EXPIRES)
            .heartbeat(READ_HEARTBEAT)
            .messages()
            .await
            .map_err(|err| BusError::Read(err.to_string()))?;
        // After an error the stream ends at once (and stops pulling): the
        // caller reads again from the message after the last one it got.
        let mut messages = Some(messages);
        let mut delivered = 0u64;
        Ok(futures::stream::poll_fn(move |context| {
            let Some(reading) = messages.as_mut() else {
                return Poll::Ready(None);
            };
            let polled = reading.poll_next_unpin(context);
            match polled {
                Poll::Ready(Some(message)) => {
                    let read = read_in_order(message, &mut delivered);
                    if read.is_err() {
                        messages = None;
                    }
                    Poll::Ready(Some(read))
                }
                Poll::Ready(None) => {
                    messages = None;
                    Poll::Ready(None)
                }
                Poll::Pending => Poll::Pending,
            }
        }))
    }
}

fn is_stream_not_found(err: &jetstream::context::GetStreamError) -> bool {
    matches!(
        err.kind(),
        jetstream::context::GetStreamErrorKind::JetStream(inner)
            if inner.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}

/// The consumer numbers its deliveries 1, 2, 3…: a number that skips
/// means a message was lost on the way.
fn check_delivery(
    consumer_sequence: u64,
    stream_sequence: u64,
    delivered: &mut u64,
) -> Result<(), BusError> {
    if consumer_sequence != *delivered + 1 {
        return Err(BusError::Read(format!(
            "a message was lost on the way: delivery {consumer_sequence} came after {delivered}, \
             at stream sequence {stream_sequence}"
        )));
    }
    *delivered = consumer_sequence;
    Ok(())
}

/// Messages asked for in one pull request (async-nats' ordered consumer
/// asks for 500 too).
const READ_BATCH: usize = 500;
/// How long one pull request waits for messages.
const READ_EXPIRES: Duration = Duration::from_secs(10);
/// The server sends an idle heartbeat this often while a pull request
/// waits; two missed ones end the read.
pub const READ_HEARTBEAT: Duration = Duration::from_secs(1);
/// The server removes a reader's consumer once it has not pulled for this long.
const READ_INACTIVE_THRESHOLD: Duration = Duration::from_secs(30);

/// One delivered message, checked to follow the previous one.
fn read_in_order(
    message: Result<jetstream::Message, consumer::pull::MessagesError>,
    delivered: &mut u64,
) -> Result<StreamMessage, BusError> {
    let message = message.map_err(|err| BusError::Read(format!("reading the stream: {err}")))?;
    let info = message
        .info()
        .map_err(|err| BusError::Read(err.to_string()))?;
    check_delivery(info.consumer_sequence, info.stream_sequence, delivered)?;
    let redrive_of = message
        .headers
        .as_ref()
        .and_then(|headers| headers.get(REDRIVE_OF_HEADER))
        .and_then(|value| value.as_str().parse().ok());
    let sender = message
        .headers
        .as_ref()
        .and_then(|headers| headers.get(SENDER_HEADER))
        .map(|value| value.as_str().to_owned());
    Ok(StreamMessage {
        sequence: info.stream_sequence,
        published: Some(info.published),
        subject: message.subject.to_string(),
        payload: message.payload.clone(),
        redrive_of,
        pending: info.pending,
        sender,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use local_nats::LocalNats;

    #[tokio::test]
    async fn publish_deduplicates_byte_identical_bodies_and_reads_back_in_order() {
        let server = LocalNats::start().unwrap_or_else(|err| panic!("{err}"));
        let bus = Bus::connect(&server.url(), "bus-test")
            .await
            .expect("connect");
        bus.ensure_stream().await.expect("stream");
        // Only a byte-identical body is a duplicate to JetStream.
        for (body, duplicate) in [("1", false), ("2", false), ("1", true), ("1 ", false)] {
            let ack = bus
                .publish_event("cases.C1.case.paid".into(), Bytes::from(body))
                .await
                .expect("publish")
                .await
                .expect("ack");
            assert_eq!(ack.duplicate, duplicate, "{body:?}");
        }
        assert_eq!(bus.last_sequence().await.unwrap(), 3);
        let read: Vec<_> = bus
            .read_from(2)
            .await
            .expect("read")
            .take(1)
            .collect()
            .await;
        let message = read.into_iter().next().unwrap().unwrap();
        assert_eq!((message.sequence, message.payload.as_ref()), (2, &b"2"[..]));
        assert_eq!(message.subject, "cases.C1.case.paid");
    }

    /// Services start together: the projector and the ingest services each
    /// create CASES when it is missing. Whoever loses the race must find the
    /// stream the winner made, not fail ("subjects overlap").
    #[tokio::test(flavor = "multi_thread")]
    async fn services_creating_the_stream_at_once_all_succeed() {
        for round in 0..5 {
            let server = LocalNats::start().unwrap_or_else(|err| panic!("{err}"));
            let mut buses = Vec::new();
            for index in 0..6 {
                let name = format!("bus-test-{index}");
                buses.push(Bus::connect(&server.url(), &name).await.expect("connect"));
            }
            let results = futures::future::join_all(buses.iter().map(Bus::ensure_stream)).await;
            for result in results {
                if let Err(err) = result {
                    panic!("round {round}: {err}");
                }
            }
        }
    }

    /// A server that goes silent (paused here; a lost pull request looks
    /// the same to the reader) ends the read within a few seconds, so the
    /// caller reads again, instead of waiting a minute for async-nats'
    /// ordered consumer to notice.
    #[tokio::test]
    async fn a_read_from_a_silent_server_ends_with_an_error_within_seconds() {
        let server = LocalNats::start().unwrap_or_else(|err| panic!("{err}"));
        let bus = Bus::connect(&server.url(), "bus-test")
            .await
            .expect("connect");
        bus.ensure_stream().await.expect("stream");
        bus.publish_event("cases.C1.case.paid".into(), Bytes::from("1"))
            .await
            .expect("publish")
            .await
            .expect("ack");
        let mut read = Box::pin(bus.read_from(1).await.expect("read"));
        let first = read.next().await.expect("a message").expect("no error");
        assert_eq!(first.sequence, 1);
        let pid = server.pid().expect("running").to_string();
        let signal = |name: &str| {
            let status = std::process::Command::new("kill")
                .args([name, &pid])
                .status()
                .expect("kill");
            assert!(status.success(), "kill {name} {pid}");
        };
        signal("-STOP");
        let waited = tokio::time::timeout(Duration::from_secs(8), read.next()).await;
        signal("-CONT");
        let ended = waited.expect("the read must not wait for long on a silent server");
        let err = ended
            .expect("an item")
            .expect_err("an error, not a message");
        assert!(err.to_string().contains("heartbeat"), "{err}");
        assert!(read.next().await.is_none(), "the read ends after its error");
    }

    /// Losing a message between two delivered ones ends the read with an
    /// error, before any later message is passed on.
    #[test]
    fn a_skipped_delivery_is_an_error() {
        let mut delivered = 4;
        assert!(matches!(check_delivery(5, 12, &mut delivered), Ok(())));
        assert_eq!(delivered, 5);
        let err = check_delivery(7, 14, &mut delivered).expect_err("a gap");
        assert!(err.to_string().contains("delivery 7 came after 5"), "{err}");
        assert_eq!(delivered, 5);
    }

    #[tokio::test]
    async fn connecting_to_a_stopped_server_says_so() {
        let server = LocalNats::start().unwrap_or_else(|err| panic!("{err}"));
        let url = server.url();
        drop(server);
        let err = Bus::connect(&url, "bus-test")
            .await
            .err()
            .expect("must fail");
        assert!(err.to_string().contains("cannot reach NATS"), "{err}");
    }
}
