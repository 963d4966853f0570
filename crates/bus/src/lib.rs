//! The NATS JetStream edge: the `CASES` stream, publishing case events with
//! `Nats-Msg-Id` = `event_id`, and reading the stream in order from a
//! sequence.
//!
//! The projector's checkpoint lives in its own store, not in a durable
//! consumer: it reads with an ordered consumer from checkpoint + 1, so a
//! restart, a rebuild and a benchmark all read the log the same way.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, context::PublishAckFuture, stream};
use async_nats::HeaderMap;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};

/// The stream that holds every case event (§2).
pub const STREAM_NAME: &str = "CASES";

/// How long JetStream remembers a `Nats-Msg-Id` to drop a re-publish. The
/// projector deduplicates by event id for ever; this only saves work.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error(
        "cannot reach NATS at {url}: {detail} (is nats-server running? see deploy/scripts/demo.sh)"
    )]
    Connect { url: String, detail: String },
    #[error("stream {STREAM_NAME}: {0}")]
    Stream(String),
    #[error("publish to {subject}: {detail}")]
    Publish { subject: String, detail: String },
    #[error("reading stream {STREAM_NAME}: {0}")]
    Read(String),
}

/// The `CASES` stream configuration: file storage, kept for ever (the log
/// is the source of truth for replays and audits).
pub fn stream_config(replicas: usize) -> stream::Config {
    stream::Config {
        name: STREAM_NAME.to_owned(),
        description: Some(
            "Case events from the provincial one-stop systems (CONTRACT §2)".to_owned(),
        ),
        subjects: vec![kpi_events::STREAM_SUBJECTS.to_owned()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::New,
        duplicate_window: DUPLICATE_WINDOW,
        num_replicas: replicas.max(1),
        ..Default::default()
    }
}

/// A connection to NATS with its JetStream context.
#[derive(Clone)]
pub struct Bus {
    jetstream: jetstream::Context,
}

/// The stream's identity (a recreated stream has a new creation time) and
/// the sequences it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamState {
    pub created: DateTime<Utc>,
    pub first_sequence: u64,
    pub last_sequence: u64,
}

/// One message read from the stream, with its position.
#[derive(Debug, Clone)]
pub struct StreamMessage {
    pub sequence: u64,
    pub subject: String,
    pub payload: Bytes,
    pub published: Option<DateTime<Utc>>,
}

impl Bus {
    /// Connects, failing fast with a clear message when NATS is down.
    pub async fn connect(url: &str, client_name: &str) -> Result<Bus, BusError> {
        let options = async_nats::ConnectOptions::new()
            .name(client_name)
            .connection_timeout(Duration::from_secs(5));
        let client = options
            .connect(url)
            .await
            .map_err(|err| BusError::Connect {
                url: url.to_owned(),
                detail: err.to_string(),
            })?;
        Ok(Bus {
            jetstream: jetstream::new(client),
        })
    }

    pub fn jetstream(&self) -> &jetstream::Context {
        &self.jetstream
    }

    /// Creates the `CASES` stream if it does not exist yet.
    pub async fn ensure_stream(&self) -> Result<stream::Stream, BusError> {
        self.jetstream
            .get_or_create_stream(stream_config(1))
            .await
            .map_err(|err| BusError::Stream(err.to_string()))
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

    /// Publishes one event on its subject with `Nats-Msg-Id`. The returned
    /// future resolves to JetStream's ack: only then is the event stored.
    pub async fn publish_event(
        &self,
        subject: String,
        message_id: &str,
        payload: Bytes,
    ) -> Result<PublishAckFuture, BusError> {
        let mut headers = HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, message_id);
        self.jetstream
            .publish_with_headers(subject.clone(), headers, payload)
            .await
            .map_err(|err| BusError::Publish {
                subject,
                detail: err.to_string(),
            })
    }

    /// Every message from `start_sequence` on, in stream order, then new
    /// ones as they arrive. Gaps and server restarts are handled by the
    /// ordered consumer, which recreates itself where it left off.
    pub async fn read_from(
        &self,
        start_sequence: u64,
    ) -> Result<impl Stream<Item = Result<StreamMessage, BusError>> + Send + 'static, BusError>
    {
        let stream = self.ensure_stream().await?;
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: start_sequence.max(1),
                },
                ..Default::default()
            })
            .await
            .map_err(|err| BusError::Read(err.to_string()))?;
        let messages = consumer
            .messages()
            .await
            .map_err(|err| BusError::Read(err.to_string()))?;
        Ok(messages.map(|message| {
            let message = message.map_err(|err| BusError::Read(err.to_string()))?;
            let info = message
                .info()
                .map_err(|err| BusError::Read(err.to_string()))?;
            Ok(StreamMessage {
                sequence: info.stream_sequence,
                published: Some(info.published),
                subject: message.subject.to_string(),
                payload: message.payload.clone(),
            })
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use local_nats::LocalNats;

    #[tokio::test]
    async fn publish_deduplicates_by_message_id_and_reads_back_in_order() {
        let server = LocalNats::start().unwrap_or_else(|err| panic!("{err}"));
        let bus = Bus::connect(&server.url(), "bus-test")
            .await
            .expect("connect");
        bus.ensure_stream().await.expect("stream");
        for (id, body) in [("a", "1"), ("b", "2"), ("a", "1 again")] {
            let ack = bus
                .publish_event("cases.C1.case.paid".into(), id, Bytes::from(body))
                .await
                .expect("publish")
                .await
                .expect("ack");
            assert_eq!(ack.duplicate, id == "a" && body != "1");
        }
        assert_eq!(bus.last_sequence().await.unwrap(), 2);
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
