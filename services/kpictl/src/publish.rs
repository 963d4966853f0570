//! Publishing many events with many acks in flight.
//!
//! An event counts as sent only when JetStream has acked it; acks are
//! awaited in a window so that throughput does not depend on the round
//! trip.

use std::future::Future;
use std::pin::Pin;

use async_nats::jetstream::publish::PublishAck;
use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use kpi_bus::{Bus, BusError};

/// Acks awaited at once.
const WINDOW: usize = 1024;

type AckFuture<T> = Pin<Box<dyn Future<Output = (T, Result<PublishAck, String>)> + Send>>;

/// Publishes with up to [`WINDOW`] acks in flight. `T` tags each message
/// (a line number, say) so the caller can tell which ack is which.
pub struct Publisher<T> {
    bus: Bus,
    in_flight: FuturesUnordered<AckFuture<T>>,
}

impl<T: Send + 'static> Publisher<T> {
    pub fn new(bus: Bus) -> Self {
        Publisher {
            bus,
            in_flight: FuturesUnordered::new(),
        }
    }

    /// Sends one message; returns the acks that completed meanwhile.
    pub async fn send(
        &mut self,
        tag: T,
        subject: String,
        message_id: &str,
        payload: Bytes,
    ) -> Result<Vec<(T, Result<PublishAck, String>)>, BusError> {
        let ack = self.bus.publish_event(subject, message_id, payload).await?;
        self.in_flight.push(Box::pin(async move {
            let result = ack.await.map_err(|err| err.to_string());
            (tag, result)
        }));
        let mut done = Vec::new();
        while self.in_flight.len() >= WINDOW {
            if let Some(completed) = self.in_flight.next().await {
                done.push(completed);
            }
        }
        Ok(done)
    }

    /// Waits for every ack still in flight.
    pub async fn finish(mut self) -> Vec<(T, Result<PublishAck, String>)> {
        let mut done = Vec::with_capacity(self.in_flight.len());
        while let Some(completed) = self.in_flight.next().await {
            done.push(completed);
        }
        done
    }
}
