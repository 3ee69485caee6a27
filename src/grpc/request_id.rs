//! Request ids: every call gets one — the caller's `x-request-id` when it is
//! a sane token, a fresh UUID otherwise — carried on the request span and
//! returned in the response's `x-request-id`, so a caller's logs and ours
//! meet on one value.

use std::pin::Pin;
use std::task::{Context, Poll};

use http::{HeaderValue, Request, Response};
use tower::{Layer, Service};

pub const HEADER: &str = "x-request-id";

/// The caller's id if it is 1–128 visible ASCII characters.
pub fn given(header: Option<&HeaderValue>) -> Option<&str> {
    header
        .filter(|v| {
            (1..=128).contains(&v.len()) && v.as_bytes().iter().all(|b| b.is_ascii_graphic())
        })
        .and_then(|v| v.to_str().ok())
}

/// The caller's id if it is 1–128 visible ASCII characters, else a new one.
pub fn pick(header: Option<&HeaderValue>) -> HeaderValue {
    match header {
        Some(h) if given(Some(h)).is_some() => h.clone(),
        _ => HeaderValue::from_str(&uuid::Uuid::new_v4().to_string())
            .expect("a UUID is a valid header value"),
    }
}

/// Wraps the server's services.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestIdLayer;

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestId<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestId { inner }
    }
}

#[derive(Debug, Clone)]
pub struct RequestId<S> {
    inner: S,
}

impl<S, B, R> Service<Request<B>> for RequestId<S>
where
    S: Service<Request<B>, Response = Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let made_up = given(request.headers().get(HEADER)).is_none();
        let id = pick(request.headers().get(HEADER));
        // The handlers read it from here.
        request.headers_mut().insert(HEADER, id.clone());
        let response = self.inner.call(request);
        Box::pin(async move {
            // The call's span (app's trace_fn) is made from the request before
            // this layer sees it, and is entered while this future runs: give
            // it the id made here before anything logs.
            if made_up {
                tracing::Span::current().record("request_id", id.to_str().unwrap_or_default());
            }
            let mut response = response.await?;
            response.headers_mut().insert(HEADER, id);
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_sane_ids_and_replaces_the_rest() {
        let given = HeaderValue::from_static("req-42_abc");
        assert_eq!(pick(Some(&given)), given);
        let spaced = HeaderValue::from_static("has space");
        assert_ne!(pick(Some(&spaced)), spaced);
        let long = HeaderValue::from_str(&"x".repeat(129)).unwrap();
        assert_ne!(pick(Some(&long)), long);
        let fresh = pick(None);
        assert!(uuid::Uuid::parse_str(fresh.to_str().unwrap()).is_ok());
    }
}
