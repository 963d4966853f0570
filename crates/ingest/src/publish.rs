//! Publishing many events with many acks in flight, each retried until a
//! deadline.
//!
//! An event counts as stored only when JetStream has acked it. Acks are
//! awaited in a window so that throughput does not depend on the round
//! trip. When NATS is down or slow, each event is published again with
//! backoff until its deadline; its `Nats-Msg-Id` is the hash of its body
//! (CONTRACT §2), so every attempt after the first that got through is a
//! duplicate JetStream drops (and the projector drops any copy that gets
//! past the duplicate window): retrying never counts an event twice.
//!
//! Only a byte-identical body is a duplicate to JetStream. An event id
//! reused for other content has another hash, reaches the log and is judged
//! by the projector (CONTRACT §1.2), whatever the order: nothing needs
//! reading back.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use kpi_bus::Bus;
use tokio::time::Instant;

/// Acks awaited at once.
pub const WINDOW: usize = 1024;

/// The default time an event may take to be stored before it is reported
/// as not stored.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(5);

/// The longest one attempt waits for its ack before publishing again.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// The first pause between attempts; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Where JetStream stored an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// The stream sequence (of the first copy, for a duplicate).
    pub sequence: u64,
    /// JetStream already had a message with this id.
    pub duplicate: bool,
}

/// One message to publish.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub subject: String,
    pub payload: Bytes,
    /// Who sent it (`Kpi-Sender`, CONTRACT §8.1).
    pub sender: std::sync::Arc<str>,
}

/// Publishes until JetStream acks or `deadline` passes, retrying with
/// backoff; the error says what went wrong last.
pub async fn publish_until(
    bus: &Bus,
    message: &Outgoing,
    deadline: Instant,
) -> Result<Stored, String> {
    let mut backoff = FIRST_BACKOFF;
    let mut last_error = String::from("no attempt was made before the deadline");
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(format!(
                "not stored by JetStream in time (NATS down or slow?): {last_error}"
            ));
        }
        let attempt = async {
            let ack = bus
                .publish_sent(
                    message.subject.clone(),
                    message.payload.clone(),
                    &message.sender,
                )
                .await
                .map_err(|err| err.to_string())?;
            ack.await.map_err(|err| err.to_string())
        };
        match tokio::time::timeout(remaining.min(ATTEMPT_TIMEOUT), attempt).await {
            Ok(Ok(ack)) => {
                return Ok(Stored {
                    sequence: ack.sequence,
                    duplicate: ack.duplicate,
                })
            }
            Ok(Err(err)) => last_error = err,
            Err(_) => last_error = "no ack".to_owned(),
        }
        // What the server refuses this user, retrying will not get.
        if let Some(violation) = bus.violated() {
            return Err(violation.to_string());
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        tokio::time::sleep(backoff.min(remaining)).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

type Pending<T> = Pin<Box<dyn Future<Output = (T, Result<Stored, String>)> + Send>>;

/// Publishes with up to [`WINDOW`] acks in flight. `T` tags each message
/// (a line number, say) so the caller can tell which outcome is which.
pub struct Publisher<T> {
    bus: Bus,
    deadline: Duration,
    in_flight: FuturesUnordered<Pending<T>>,
}

impl<T: Send + 'static> Publisher<T> {
    /// Each message may take `deadline` from when it is sent to be stored.
    pub fn new(bus: Bus, deadline: Duration) -> Self {
        Publisher {
            bus,
            deadline,
            in_flight: FuturesUnordered::new(),
        }
    }

    /// Sends one message; returns the outcomes that completed meanwhile
    /// (waiting for some when the window is full).
    pub async fn send(&mut self, tag: T, message: Outgoing) -> Vec<(T, Result<Stored, String>)> {
        let bus = self.bus.clone();
        let deadline = Instant::now() + self.deadline;
        self.in_flight.push(Box::pin(async move {
            let outcome = publish_until(&bus, &message, deadline).await;
            (tag, outcome)
        }));
        let mut done = Vec::new();
        while self.in_flight.len() >= WINDOW {
            if let Some(completed) = self.in_flight.next().await {
                done.push(completed);
            }
        }
        done
    }

    /// Waits for every outcome still in flight; the publisher can go on.
    pub async fn drain(&mut self) -> Vec<(T, Result<Stored, String>)> {
        let mut done = Vec::with_capacity(self.in_flight.len());
        while let Some(completed) = self.in_flight.next().await {
            done.push(completed);
        }
        done
    }

    /// Waits for every outcome still in flight.
    pub async fn finish(mut self) -> Vec<(T, Result<Stored, String>)> {
        self.drain().await
    }
}
