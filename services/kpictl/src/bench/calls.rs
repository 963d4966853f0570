//! Calls/s from many clients for `kpictl bench`, fair to the server on a
//! machine the clients share with it.
//!
//! - The clients keep each reply as bytes instead of decoding it. A
//!   GetRates reply (~1.7 KB, 45 named counters) costs a client about
//!   8 µs to decode, a health `Check` reply nothing; on two CPUs shared
//!   with the server that client work would be counted against the
//!   server. (Every reply is still checked to be a whole gRPC answer with
//!   status OK; the single-client latency calls decode theirs.)
//! - The two calls being compared are measured in alternating windows,
//!   A B B A, and each total is summed over its two windows, so that
//!   background load that drifts over the measurement (the disk writing
//!   back the views, other tenants of the machine) weighs on both alike.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use tonic::codec::{Codec, DecodeBuf, Decoder};
use tonic::transport::Channel;
use tonic::Status;

/// A unary call whose reply is kept as its encoded bytes (or decoded,
/// to show what decoding costs the clients).
#[derive(Clone)]
pub struct RawCall<Q> {
    path: &'static str,
    request: Q,
    decode: Option<fn(Bytes) -> bool>,
    /// `authorization: Bearer …`, for a projector with `--tokens`.
    bearer: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl<Q: prost::Message + Clone + Send + Sync + 'static> RawCall<Q> {
    pub fn new(path: &'static str, request: Q) -> Self {
        RawCall {
            path,
            request,
            decode: None,
            bearer: None,
        }
    }

    /// The same call with a bearer token.
    pub fn with_token(self, token: &str) -> anyhow::Result<Self> {
        Ok(RawCall {
            bearer: Some(format!("Bearer {token}").parse()?),
            ..self
        })
    }

    /// The same call, each reply decoded as an `M` as a real client would.
    pub fn decoding_as<M: prost::Message + Default>(self) -> Self {
        RawCall {
            decode: Some(|bytes| M::decode(bytes).is_ok()),
            ..self
        }
    }

    /// One call on `channel`; the reply's length.
    pub async fn call(&self, channel: Channel) -> Result<usize, Status> {
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready()
            .await
            .map_err(|err| Status::unavailable(err.to_string()))?;
        let mut request = tonic::Request::new(self.request.clone());
        if let Some(bearer) = &self.bearer {
            request
                .metadata_mut()
                .insert("authorization", bearer.clone());
        }
        let reply = grpc
            .unary(
                request,
                tonic::codegen::http::uri::PathAndQuery::from_static(self.path),
                RawReplyCodec::<Q>(PhantomData),
            )
            .await?;
        let reply = reply.into_inner();
        let length = reply.len();
        if self.decode.is_some_and(|decode| !decode(reply)) {
            return Err(Status::internal(format!(
                "{}: a reply that does not decode",
                self.path
            )));
        }
        Ok(length)
    }
}

/// Encodes requests with prost; leaves replies as bytes.
struct RawReplyCodec<Q>(PhantomData<Q>);

impl<Q: prost::Message + Send + 'static> Codec for RawReplyCodec<Q> {
    type Encode = Q;
    type Decode = Bytes;
    type Encoder = tonic_prost::ProstEncoder<Q>;
    type Decoder = KeepBytes;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        KeepBytes
    }
}

struct KeepBytes;

impl Decoder for KeepBytes {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// Calls/s of `a` and of `b`, each from `clients` clients (one connection
/// each), in windows of `window` after a second's warm-up, in the order
/// a, b, b, a.
pub async fn alternating<QA, QB>(
    channels: &[Channel],
    a: RawCall<QA>,
    b: RawCall<QB>,
    window: Duration,
) -> anyhow::Result<(f64, f64)>
where
    QA: prost::Message + Clone + Send + Sync + 'static,
    QB: prost::Message + Clone + Send + Sync + 'static,
{
    let mut totals = [(0u64, 0f64); 2];
    for which in [0usize, 1, 1, 0] {
        let (calls, seconds) = if which == 0 {
            calls_per_window(channels, a.clone(), window).await?
        } else {
            calls_per_window(channels, b.clone(), window).await?
        };
        totals[which].0 += calls;
        totals[which].1 += seconds;
    }
    let rate = |(calls, seconds): (u64, f64)| calls as f64 / seconds;
    Ok((rate(totals[0]), rate(totals[1])))
}

/// Calls counted in one window (after a second's warm-up), and its length.
pub async fn calls_per_window<Q>(
    channels: &[Channel],
    call: RawCall<Q>,
    window: Duration,
) -> anyhow::Result<(u64, f64)>
where
    Q: prost::Message + Clone + Send + Sync + 'static,
{
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for channel in channels {
        let (stop, calls, call, channel) =
            (stop.clone(), calls.clone(), call.clone(), channel.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let length = call.call(channel.clone()).await?;
                if length == 0 {
                    return Err(Status::internal(format!("{}: an empty reply", call.path)));
                }
                calls.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<(), Status>(())
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = calls.load(Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(window).await;
    let counted = calls.load(Ordering::Relaxed) - before;
    let seconds = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await??;
    }
    Ok((counted, seconds))
}
