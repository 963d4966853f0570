//! Limits every post is held to, whoever sends it (CONTRACT §8.1): its
//! body is read within 30 s, with at most 10 s between two pieces of it,
//! and at most 64 posts are answered at once by a service (more get 503
//! with `Retry-After`). A client that sends headers and half a body, then
//! nothing, is answered 408 and disconnected.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// The longest a whole body may take.
pub const BODY_DEADLINE: Duration = Duration::from_secs(30);

/// The longest a body may pause between two pieces.
pub const BODY_IDLE: Duration = Duration::from_secs(10);

/// Posts answered at once by one service.
pub const POSTS_IN_FLIGHT: usize = 64;

/// Why reading a body stopped.
#[derive(Debug, thiserror::Error)]
pub enum BodyTimedOut {
    #[error("the body took longer than {} s to arrive", BODY_DEADLINE.as_secs())]
    Whole,
    #[error("nothing of the body arrived for {} s", BODY_IDLE.as_secs())]
    Idle,
}

/// A request body read within [`BODY_DEADLINE`] and [`BODY_IDLE`].
pub struct DeadlineBody {
    inner: Body,
    deadline: Pin<Box<Sleep>>,
    idle: Pin<Box<Sleep>>,
    idle_for: Duration,
}

impl DeadlineBody {
    pub fn new(inner: Body, whole: Duration, idle: Duration) -> DeadlineBody {
        DeadlineBody {
            inner,
            deadline: Box::pin(tokio::time::sleep(whole)),
            idle: Box::pin(tokio::time::sleep(idle)),
            idle_for: idle,
        }
    }
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        if self.deadline.as_mut().poll(context).is_ready() {
            return Poll::Ready(Some(Err(axum::Error::new(BodyTimedOut::Whole))));
        }
        match Pin::new(&mut self.inner).poll_frame(context) {
            Poll::Ready(frame) => {
                let idle_for = self.idle_for;
                self.idle.as_mut().reset(Instant::now() + idle_for);
                Poll::Ready(frame)
            }
            Poll::Pending => {
                if self.idle.as_mut().poll(context).is_ready() {
                    return Poll::Ready(Some(Err(axum::Error::new(BodyTimedOut::Idle))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The request with its body read under the deadlines.
pub fn with_deadlines(request: Request, whole: Duration, idle: Duration) -> Request {
    request.map(|body| Body::new(DeadlineBody::new(body, whole, idle)))
}

/// Whether a body could not be read because it came too slowly.
pub fn timed_out(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(error) = source {
        if error.is::<BodyTimedOut>() || error.to_string().contains("of the body arrived") {
            return true;
        }
        source = error.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stops_coming_is_cut_off() {
        let (sender, body) = {
            let (sender, receiver) =
                tokio::sync::mpsc::channel::<Result<Frame<Bytes>, axum::Error>>(4);
            let stream = tokio_stream::wrappers::ReceiverStream::new(receiver);
            (sender, Body::new(http_body_util::StreamBody::new(stream)))
        };
        sender
            .send(Ok(Frame::data(Bytes::from_static(b"half"))))
            .await
            .unwrap();
        let body = DeadlineBody::new(body, BODY_DEADLINE, BODY_IDLE);
        let collected = tokio::spawn(async move { body.collect().await });
        tokio::time::sleep(BODY_IDLE + Duration::from_secs(1)).await;
        let error = collected.await.unwrap().expect_err("cut off");
        assert!(timed_out(&error), "{error}");
        drop(sender);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_trickles_is_cut_off_at_the_deadline() {
        let (sender, receiver) =
            tokio::sync::mpsc::channel::<Result<Frame<Bytes>, axum::Error>>(64);
        let stream = tokio_stream::wrappers::ReceiverStream::new(receiver);
        let body = DeadlineBody::new(
            Body::new(http_body_util::StreamBody::new(stream)),
            BODY_DEADLINE,
            BODY_IDLE,
        );
        let collected = tokio::spawn(async move { body.collect().await });
        for _ in 0..8 {
            tokio::time::sleep(Duration::from_secs(5)).await;
            if sender
                .send(Ok(Frame::data(Bytes::from_static(b"x"))))
                .await
                .is_err()
            {
                break;
            }
        }
        let error = collected.await.unwrap().expect_err("cut off");
        assert!(error.to_string().contains("longer than 30 s"), "{error}");
    }
}
