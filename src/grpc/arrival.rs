//! A request must arrive whole within the handshake timeout of its
//! headers. Every call of the API is one request message (no client
//! streams), so a request body still open after that is a client holding
//! a stream — and the handler's memory — open: its call ends
//! DEADLINE_EXCEEDED and the stream is freed. Without this, streams that
//! announce a message and never send it (the open health and reflection
//! services need no credential) piled up ~10 KiB each, for ever.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tonic::body::Body;
use tower::{Layer, Service};

/// Wraps the server's services.
#[derive(Debug, Clone, Copy)]
pub struct ArrivalLayer {
    pub within: Duration,
}

impl<S> Layer<S> for ArrivalLayer {
    type Service = Arrival<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Arrival {
            inner,
            within: self.within,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Arrival<S> {
    inner: S,
    within: Duration,
}

impl<S> Service<Request<Body>> for Arrival<S>
where
    S: Service<Request<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let within = self.within;
        self.inner.call(request.map(|body| {
            if body.is_end_stream() {
                body
            } else {
                Body::new(Arriving {
                    body,
                    by: tokio::time::Instant::now() + within,
                    timer: None,
                    within,
                })
            }
        }))
    }
}

/// A request body that fails once `by` passes before its end. The timer
/// is armed only when the body has to be waited for: a request that came
/// with its headers (most do) costs no timer.
struct Arriving {
    body: Body,
    by: tokio::time::Instant,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    within: Duration,
}

impl HttpBody for Arriving {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(None) => {
                this.timer = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(frame)) => Poll::Ready(Some(frame)),
            Poll::Pending => {
                let by = this.by;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(by)));
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                Poll::Ready(Some(Err(tonic::Status::deadline_exceeded(format!(
                    "the request did not arrive whole within {:?} of its headers \
                     (--handshake-timeout)",
                    this.within
                )))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
